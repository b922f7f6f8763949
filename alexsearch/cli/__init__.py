"""The command line (typer): `app` registers the commands by family (`weights`, `index`
for index/query/info, `codes`, `train` for train/eval, `viz`); `render` draws tables,
JSON and progress. Commands parse, call the library, and render.
"""
