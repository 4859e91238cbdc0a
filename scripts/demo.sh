#!/usr/bin/env bash
# Main job: build (or reuse) the toy world and run the whole AsFT story on it.
source "$(dirname "$0")/_env.sh"
exec asft demo "$@"
