// Swagger UI over the gateway's own OpenAPI document. A file of its own rather than an
// inline script, so the page's Content-Security-Policy can forbid inline scripts.
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  // The default sends the document to validator.swagger.io for a badge: nothing leaves.
  validatorUrl: null,
  // BaseLayout: no top bar to load other documents from other URLs.
  layout: "BaseLayout",
  presets: [SwaggerUIBundle.presets.apis],
});
