"""One ``APIRouter`` per resource of the serving API."""
