"""One FastAPI router per OpenAPI tag. The app includes them in a fixed order: route order decides matching and the order of openapi.json paths."""
