"""The Flask side: blueprints for the pages, the page's JSON routes and the /v1 API, and what guards them
(sign-in, sessions, CSRF, rate limits), errors and request checks. It uses the other layers; none of them
uses it."""
