// The widget manager (@jupyter-widgets/html-manager 1.x) typesets widget labels through the MathJax 2 API,
// MathJax.Hub.Queue(["Typeset", MathJax.Hub, element]); the book serves MathJax 3, which has no Hub. This maps that
// one call onto MathJax 3, queueing elements until MathJax has started.
(function () {
  const pending = [];
  const typeset = (command) => {
    const element = command[2];
    if (window.MathJax && window.MathJax.typesetPromise) {
      window.MathJax.typesetPromise([element]).catch((error) => console.warn("MathJax:", error));
    } else {
      pending.push(element);
    }
  };
  const config = (window.MathJax = window.MathJax || {});
  config.Hub = { Queue: typeset };
  const startup = config.startup || {};
  config.startup = Object.assign({}, startup, {
    ready() {
      (startup.ready || (() => window.MathJax.startup.defaultReady()))();
      window.MathJax.Hub = { Queue: typeset };
      if (pending.length) window.MathJax.typesetPromise(pending.splice(0));
    },
  });
})();
