/* Small progressive enhancements for the portal; every page works without them. */
(function () {
  "use strict";

  function flash(button, text) {
    var original = button.dataset.label || button.textContent;
    button.dataset.label = original;
    button.textContent = text;
    window.setTimeout(function () { button.textContent = original; }, 2500);
  }

  function selectAll(field) {
    field.focus();
    field.select();
    if (field.setSelectionRange) field.setSelectionRange(0, field.value.length);
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy-target]");
    if (!button) return;
    var field = document.querySelector(button.dataset.copyTarget);
    if (!field) return;
    var text = "value" in field ? field.value : field.textContent;
    function fallback() {
      if ("value" in field) {
        selectAll(field);
      } else {
        var range = document.createRange();
        range.selectNodeContents(field);
        window.getSelection().removeAllRanges();
        window.getSelection().addRange(range);
      }
      flash(button, "Selected: press Ctrl+C");
    }
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(function () { flash(button, "Copied"); }, fallback);
    } else {
      fallback();
    }
  });

  // Controls that only work with this script stay hidden without it.
  document.querySelectorAll("[data-needs-js]").forEach(function (element) { element.hidden = false; });

  document.addEventListener("submit", function (event) {
    var message = event.target.dataset && event.target.dataset.confirm;
    if (message && !window.confirm(message)) event.preventDefault();
  });
})();

/* Deployments: an alias and a fixed version exclude each other; clearing one when the other is typed. */
(function () {
  "use strict";
  var alias = document.getElementById("id_alias");
  var version = document.getElementById("id_version");
  if (!alias || !version || !alias.form || alias.form !== version.form || !alias.form.classList.contains("deploy-form")) return;
  alias.addEventListener("input", function () { if (alias.value) version.value = ""; });
  version.addEventListener("input", function () { if (version.value) alias.value = ""; });
})();

/* Playground: send the body to the predict API with the session (and its CSRF token), show the answer. */
(function () {
  "use strict";
  var panel = document.getElementById("playground");
  var choice = document.getElementById("playground-choice");
  if (choice) {
    // Another model or version means another signature: reload the page's prefill for it.
    var model = document.getElementById("playground_model");
    var version = document.getElementById("playground_version");
    if (model) model.addEventListener("change", function () { if (version) version.value = ""; choice.submit(); });
    if (version) version.addEventListener("change", function () { choice.submit(); });
  }
  if (!panel) return;
  var body = document.getElementById("playground-body");
  var curlBody = document.getElementById("playground-curl-body");
  var send = document.getElementById("playground-send");
  var status = document.getElementById("playground-status");
  var result = document.getElementById("playground-result");
  var meta = document.getElementById("playground-meta");
  var output = document.getElementById("playground-output");

  function shellQuote(text) { return "'" + text.replace(/'/g, "'\\''") + "'"; }

  if (body && curlBody) {
    body.addEventListener("input", function () { curlBody.textContent = shellQuote(body.value); });
  }
  if (!send || !body) return;

  function fact(name, value, href) {
    var term = document.createElement("dt");
    term.textContent = name;
    var detail = document.createElement("dd");
    if (href) {
      var link = document.createElement("a");
      link.href = href;
      link.textContent = value;
      detail.appendChild(link);
    } else {
      detail.textContent = value;
    }
    meta.appendChild(term);
    meta.appendChild(detail);
  }

  function requestLink(id) {
    return id && panel.dataset.recordsUrl ? panel.dataset.recordsUrl + encodeURIComponent(id) + "/" : null;
  }

  function show(httpStatus, answer) {
    meta.textContent = "";
    output.textContent = "";
    result.hidden = false;
    result.classList.toggle("failed", !(answer && "output" in answer));
    fact("HTTP status", String(httpStatus));
    if (answer && "output" in answer) {
      fact("Model", answer.model);
      fact("Version", "v" + answer.model_version);
      fact("Alias", answer.alias || "—");
      fact("Pinned", answer.pinned ? "yes (the key's pin)" : "no");
      fact("Canary", answer.canary ? "yes" : "no");
      fact("Latency", answer.latency_ms + " ms");
      fact("Request id", answer.request_id, requestLink(answer.request_id));
      output.textContent = JSON.stringify(answer.output, null, 2);
    } else if (answer && answer.error) {
      fact("Error", answer.error.code);
      fact("Message", answer.error.message);
      if (answer.error.fields) fact("Fields", JSON.stringify(answer.error.fields));
      if (answer.error.request_id) fact("Request id", answer.error.request_id, requestLink(answer.error.request_id));
    } else {
      fact("Error", "The answer is not the API's JSON.");
    }
  }

  send.addEventListener("click", function () {
    try {
      JSON.parse(body.value);
    } catch (error) {
      status.textContent = "The body is not valid JSON: " + error.message;
      return;
    }
    var token = panel.querySelector("[name=csrfmiddlewaretoken]");
    send.disabled = true;
    status.textContent = "Sending…";
    fetch(panel.dataset.predictUrl, {
      method: "POST",
      credentials: "same-origin",
      headers: {
        "Accept": "application/json",
        "Content-Type": "application/json",
        "X-CSRFToken": token ? token.value : ""
      },
      body: body.value
    }).then(function (response) {
      return response.json().catch(function () { return null; }).then(function (answer) {
        show(response.status, answer);
        status.textContent = response.ok ? "Answered." : "Refused or failed.";
      });
    }, function (error) {
      status.textContent = "The request did not reach the portal: " + error.message;
    }).finally(function () { send.disabled = false; });
  });
})();
