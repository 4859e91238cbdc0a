#!/usr/bin/env bash
# The test suite (CPU only, no downloads). Extra arguments go to pytest.
source "$(dirname "$0")/_env.sh"
exec python -m pytest "$@"
