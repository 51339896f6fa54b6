from fp16guard_cli.main import run

run()
