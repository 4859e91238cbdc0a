from asft.cli import entry

entry()
