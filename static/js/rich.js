// Rich message bodies: syntax highlighting (highlight.js), LaTeX math (KaTeX), and copy buttons on code blocks.
// The server has already rendered and sanitised the Markdown; math arrives as the text of
// <span class="math"> / <div class="math"> elements and code as <pre><code class="language-x">.
// highlight.js and KaTeX are classic scripts (static/vendor/) that set window.hljs and window.katex.

// Copy text to the clipboard, and say so on the button for a moment.
export async function copyText(text, button) {
  const label = button.textContent;
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = "Copied";
  } catch (error) {
    button.textContent = "Copy failed";
  }
  setTimeout(() => { button.textContent = label; }, 1500);
}

export function enrich(body) {
  for (const math of body.querySelectorAll(".math")) {
    if (math.dataset.rendered || !window.katex) continue;
    const source = math.textContent;
    math.dataset.rendered = "1";
    math.setAttribute("aria-label", source);
    try {
      // throwOnError: KaTeX's own error display sets a style attribute, which the page's CSP refuses.
      window.katex.render(source.trim(), math, {
        displayMode: math.tagName === "DIV" || math.classList.contains("block"), throwOnError: true,
      });
    } catch (error) {
      math.textContent = source; // not valid LaTeX: show what the model wrote
      math.classList.add("math-error");
      math.title = error.message;
    }
  }
  for (const code of body.querySelectorAll("pre > code")) {
    const pre = code.parentElement;
    if (pre.dataset.enriched) continue;
    pre.dataset.enriched = "1";
    const source = code.textContent;
    const language = [...code.classList].find((c) => c.startsWith("language-"));
    if (language) { // the language the model named, over the block
      const label = document.createElement("span");
      label.className = "code-language";
      label.textContent = language.slice(9);
      pre.appendChild(label);
    }
    if (window.hljs) {
      const known = language && window.hljs.getLanguage(language.slice(9));
      if (language && !known) code.classList.remove(language); // unknown name: detect instead
      window.hljs.highlightElement(code);
    }
    const button = document.createElement("button");
    button.type = "button";
    button.className = "copy-code";
    button.textContent = "Copy";
    button.setAttribute("aria-label", "Copy code");
    button.addEventListener("click", () => copyText(source, button));
    pre.appendChild(button);
  }
}
