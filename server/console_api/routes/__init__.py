"""The API's routers, one per page of the console."""
