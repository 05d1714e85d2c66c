from acc.cli import app

app(prog_name="acc")
