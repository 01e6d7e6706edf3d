// The console's small progressive enhancement: every page works without it.
// A copy button for a new key's secret, and a language menu that applies on change.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  for (const button of document.querySelectorAll("button[data-copy]")) {
    button.addEventListener("click", async () => {
      const field = document.getElementById(button.dataset.copy);
      field.select();
      try {
        await navigator.clipboard.writeText(field.value);
      } catch {
        document.execCommand("copy"); // http:// pages have no clipboard API
      }
      const label = button.textContent;
      button.textContent = button.dataset.copied;
      setTimeout(() => { button.textContent = label; }, 2000);
    });
  }
  for (const select of document.querySelectorAll("select[data-autosubmit]")) {
    select.addEventListener("change", () => select.form.submit());
  }
});

// The playground (console_play.py): the browser calls the public /v1/chat/completions with
// an API key (one made for this session and model, or one pasted) and reads its SSE stream:
// reasoning apart from the answer, tool calls shown. The code samples follow the form.
document.addEventListener("DOMContentLoaded", () => {
  const root = document.getElementById("playground");
  if (!root) return;
  const $ = (id) => document.getElementById(id);
  const form = $("play-form"), log = $("play-log"), status = $("play-status");
  const send = $("play-send"), stop = $("play-stop");
  const label = (name, values = {}) =>
    root.dataset["l" + name].replace(/\{(\w+)\}/g, (_, k) => String(values[k] ?? ""));
  const keys = {}; // model -> a key made for this page's session
  let history = [], controller = null, lastSent = null;

  const element = (tag, className, text) => {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  };

  function request(stream) {
    const messages = [];
    const system = $("play-system").value.trim();
    if (system) messages.push({ role: "system", content: system });
    messages.push(...history, { role: "user", content: $("play-prompt").value });
    const body = { model: $("play-model").value, messages };
    const temperature = parseFloat($("play-temperature").value);
    const maxTokens = parseInt($("play-max-tokens").value, 10);
    if (!Number.isNaN(temperature)) body.temperature = temperature;
    if (!Number.isNaN(maxTokens)) body.max_tokens = maxTokens;
    if ($("play-tools").checked) body.tools = [JSON.parse(root.dataset.tool)];
    if (stream) Object.assign(body, { stream: true, stream_options: { include_usage: true } });
    return body;
  }

  function showCode() {
    // the request the form would send; once sent (the message box emptied), the one sent
    const body = $("play-prompt").value.trim() || !lastSent ? request(false) : lastSent;
    const py = (value) => JSON.stringify(value).replace(/":/g, '": ').replace(/,"/g, ', "')
      .replace(/\btrue\b/g, "True").replace(/\bfalse\b/g, "False");
    const messages = body.messages.map((m) => `        ${py(m)},\n`).join("");
    const extra = Object.entries(body).filter(([k]) => k !== "model" && k !== "messages")
      .map(([k, v]) => `    ${k}=${py(v)},\n`).join("");
    const call = `    model=${JSON.stringify(body.model)},\n    messages=[\n${messages}    ],\n` +
      `${extra}    stream=True,\n)\n` +
      "for chunk in stream:\n    print(chunk.choices[0].delta.content or \"\", end=\"\")\n";
    const curlBody = JSON.stringify({ ...body, stream: true }).replace(/'/g, "'\\''");
    $("code-curl").textContent = `curl ${root.dataset.openai}/chat/completions \\\n` +
      '  -H "Authorization: Bearer $OPENMAAS_API_KEY" \\\n  -H "Content-Type: application/json" \\\n' +
      `  -d '${curlBody}'`;
    $("code-openai").textContent = "import os\nfrom openai import OpenAI\n\n" +
      `client = OpenAI(base_url="${root.dataset.openai}", api_key=os.environ["OPENMAAS_API_KEY"])\n` +
      "stream = client.chat.completions.create(\n" + call;
    $("code-zhipu").textContent = "import os\nfrom zai import ZhipuAiClient  # pip install zai-sdk (or: from zhipuai import ZhipuAI)\n\n" +
      `client = ZhipuAiClient(\n    api_key=os.environ["OPENMAAS_API_KEY"], base_url="${root.dataset.zhipu}"\n)\n` +
      "stream = client.chat.completions.create(\n" + call;
  }

  async function key(model) {
    if (form.elements.key_source.value === "pasted") {
      const pasted = $("play-key").value.trim();
      if (!pasted) throw new Error(label("NeedKey"));
      return pasted;
    }
    if (keys[model]) return keys[model];
    const reply = await fetch(root.dataset.keyUrl, {
      method: "POST",
      headers: { "Content-Type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({ csrf: root.dataset.csrf, model }),
    });
    const made = await reply.json().catch(() => ({}));
    if (!reply.ok) throw new Error(made.error || reply.statusText);
    status.textContent = label("KeyMade", { id: made.id });
    return (keys[model] = made.key);
  }

  function turn() {
    const user = element("div", "turn user");
    user.append(element("strong", "", label("You")), element("p", "", $("play-prompt").value));
    const answer = element("div", "turn assistant");
    const reasoning = element("details", "reasoning");
    reasoning.open = true;
    reasoning.append(element("summary", "", label("Reasoning")), element("div", "reasoning-text"));
    reasoning.hidden = true;
    const calls = element("div", "tool-calls");
    calls.hidden = true;
    calls.append(element("strong", "", label("ToolCalls")));
    answer.append(element("strong", "", label("Assistant")), reasoning, element("div", "answer"),
      calls, element("p", "help usage"));
    log.append(user, answer);
    return answer;
  }

  function apply(view, chunk, toolCalls) {
    const delta = (chunk.choices && chunk.choices[0] && chunk.choices[0].delta) || {};
    if (delta.reasoning_content) {
      const box = view.querySelector(".reasoning");
      box.hidden = false;
      box.querySelector(".reasoning-text").textContent += delta.reasoning_content;
    }
    if (delta.content) view.querySelector(".answer").textContent += delta.content;
    for (const call of delta.tool_calls || []) {
      const index = call.index || 0;
      if (!toolCalls[index]) {
        toolCalls[index] = { name: "", arguments: "", node: element("pre", "code tool-call") };
        view.querySelector(".tool-calls").append(toolCalls[index].node);
      }
      const seen = toolCalls[index];
      seen.name += (call.function && call.function.name) || "";
      seen.arguments += (call.function && call.function.arguments) || "";
      seen.node.textContent = `${seen.name}(${seen.arguments})`;
      view.querySelector(".tool-calls").hidden = false;
    }
    if (chunk.usage) {
      view.querySelector(".usage").textContent = label("Usage",
        { prompt: chunk.usage.prompt_tokens, completion: chunk.usage.completion_tokens });
    }
  }

  async function chat(view, retried) {
    const body = request(true);
    lastSent = request(false);
    const token = await key(body.model);
    const reply = await fetch(root.dataset.chatUrl, {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (reply.status === 401 && !retried && keys[body.model] === token) {
      delete keys[body.model]; // expired or revoked: make another
      return chat(view, true);
    }
    if (!reply.ok) {
      const failed = await reply.json().catch(() => ({}));
      throw new Error((failed.error && failed.error.message) || reply.statusText);
    }
    const reader = reply.body.getReader(), decoder = new TextDecoder();
    const toolCalls = [];
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      const frames = buffer.split(/\r?\n\r?\n/);
      buffer = frames.pop();
      for (const frame of frames) {
        const data = frame.split(/\r?\n/).filter((l) => l.startsWith("data:"))
          .map((l) => l.slice(5).trim()).join("\n");
        if (!data || data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message || String(chunk.error));
        apply(view, chunk, toolCalls);
      }
    }
    history.push({ role: "user", content: body.messages[body.messages.length - 1].content });
    const answered = view.querySelector(".answer").textContent;
    if (answered) history.push({ role: "assistant", content: answered }); // not a bare tool call
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const view = turn();
    controller = new AbortController();
    send.disabled = true;
    stop.disabled = false;
    view.setAttribute("aria-busy", "true");
    try {
      await chat(view, false);
      $("play-prompt").value = "";
    } catch (error) {
      const text = error.name === "AbortError" ? label("Stopped") : `${label("Error")} ${error.message}`;
      view.append(element("p", error.name === "AbortError" ? "notice" : "error", text));
    } finally {
      view.removeAttribute("aria-busy");
      send.disabled = false;
      stop.disabled = true;
      showCode();
    }
  });
  stop.addEventListener("click", () => controller && controller.abort());
  $("play-clear").addEventListener("click", () => {
    history = [];
    lastSent = null;
    log.replaceChildren();
    showCode();
  });
  form.addEventListener("input", showCode);
  form.addEventListener("change", showCode);
  showCode();
});
