"""What is kept: the database and its migrations, conversations and their branches, users, search, exports,
and which replica writes which reply. No Flask here."""
