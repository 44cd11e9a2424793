// actdb serve: the probe box. Everything else is plain HTML forms and links.
// Text from the server is inserted with textContent only, never as HTML.
"use strict";

function probeTokens(out, answer) {
  out.textContent = "";
  const p = document.createElement("p");
  p.className = "count";
  p.textContent = answer.neuron === null
    ? `${answer.n_tokens} tokens through layer ${answer.layer} (${answer.device}); above each token, how many neurons fire`
    : `fires on ${answer.n_fired} of ${answer.n_tokens} tokens (${answer.device})`;
  if (answer.cut) p.textContent += "; the text was cut to the probe's token limit";
  out.appendChild(p);
  const line = document.createElement("div");
  line.className = "probe-tokens";
  for (const t of answer.tokens) {
    const s = document.createElement("span");
    s.className = "tok" + (t.fired ? " fire" : "");
    s.textContent = t.text;
    if (answer.neuron === null) {
      const n = document.createElement("sup");
      n.textContent = String(t.n_fired);
      s.appendChild(n);
      s.title = "fired: " + t.neurons.join(", ") + (t.n_fired > t.neurons.length ? ", …" : "");
    }
    line.appendChild(s);
  }
  out.appendChild(line);
}

async function probe(form) {
  const out = form.parentElement.querySelector(".probe-out");
  const q = new URLSearchParams({ text: form.elements.text.value });
  const layer = form.elements.layer ? form.elements.layer.value : form.dataset.layer;
  q.set("layer", layer);
  if (form.dataset.neuron !== "") q.set("neuron", form.dataset.neuron);
  out.textContent = "running…";
  const r = await fetch(form.dataset.api + "?" + q.toString());
  const answer = await r.json();
  if (!r.ok) {
    out.textContent = answer.error;
    out.className = "probe-out error";
    return;
  }
  out.className = "probe-out";
  probeTokens(out, answer);
}

document.addEventListener("DOMContentLoaded", () => {
  for (const form of document.querySelectorAll("form.probe-form")) {
    form.addEventListener("submit", (e) => { e.preventDefault(); probe(form); });
  }
});
