from daydream.cli import app

app()
