"""How the OpenAPI schema describes our two ways in: API keys and the portal's session."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "apps.apikeys.authentication.ApiKeyAuthentication"
    name = ["BearerKey", "HeaderKey"]
    priority = 1

    def get_security_definition(self, auto_schema):
        return [
            {"type": "http", "scheme": "bearer", "description": "`Authorization: Bearer aip_...`"},
            {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        ]


class PortalSessionScheme(OpenApiAuthenticationExtension):
    target_class = "apps.api.authentication.PortalSessionAuthentication"
    name = "PortalSession"

    def get_security_definition(self, auto_schema):
        return {"type": "apiKey", "in": "cookie", "name": "sessionid"}
