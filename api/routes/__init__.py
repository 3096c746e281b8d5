"""One router per resource; `recsys_api.app.ROUTERS` lists those the app mounts."""
