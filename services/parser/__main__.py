from services.parser.app import app, settings
from shared.service import serve

serve(app, settings)
