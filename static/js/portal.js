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
    function fallback() {
      selectAll(field);
      flash(button, "Selected: press Ctrl+C");
    }
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(field.value).then(function () { flash(button, "Copied"); }, fallback);
    } else {
      fallback();
    }
  });

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
