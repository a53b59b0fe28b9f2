// keyrelay portal: the little behaviour pages need, loaded as a file (the CSP allows no inline script).
// - Buttons with command="show-modal" commandfor="ID" open <dialog id="ID"> (the HTML Invoker Commands;
//   this fills in for browsers without them), command="close" closes it.
// - Buttons with data-copy="ID" copy the text of element ID to the clipboard and say so.
// - Dialogs marked data-open-on-load open at once (a form shown again with an error).
(function () {
  "use strict";
  var native = "commandForElement" in HTMLButtonElement.prototype;
  document.addEventListener("click", function (event) {
    var button = event.target instanceof Element ? event.target.closest("button") : null;
    if (!button) return;
    if (!native && button.hasAttribute("commandfor")) {
      var dialog = document.getElementById(button.getAttribute("commandfor"));
      var command = button.getAttribute("command");
      if (dialog && command === "show-modal" && !dialog.open) dialog.showModal();
      if (dialog && command === "close" && dialog.open) dialog.close();
    }
    var copyId = button.getAttribute("data-copy");
    if (copyId) {
      var source = document.getElementById(copyId);
      if (!source) return;
      var text = source.textContent || "";
      var done = function () {
        var status = document.getElementById(copyId + "-status");
        if (status) status.textContent = "Copied to the clipboard.";
      };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).then(done, function () { selectText(source); });
      } else {
        selectText(source);
      }
    }
  });
  function selectText(element) {
    var range = document.createRange();
    range.selectNodeContents(element);
    var selection = window.getSelection();
    if (selection) { selection.removeAllRanges(); selection.addRange(range); }
    var status = document.getElementById(element.id + "-status");
    if (status) status.textContent = "Selected: press Ctrl+C (or Cmd+C) to copy.";
  }
  document.querySelectorAll("dialog[data-open-on-load]").forEach(function (dialog) {
    if (!dialog.open) dialog.showModal();
  });
})();
