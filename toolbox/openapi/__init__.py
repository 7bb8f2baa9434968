"""The daemon's own OpenAPI document, generated from its routes (`toolbox.openapi.registry`)."""
