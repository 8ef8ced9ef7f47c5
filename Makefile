# The two set-up commands of README.md. Each installs what it needs on first use.
.PHONY: serve test
serve:
	scripts/dev.sh serve $(ARGS)
test:
	scripts/dev.sh test $(ARGS)
