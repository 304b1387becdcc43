#!/usr/bin/env bash
# A man page made by help2man from a program's own --help and --version; with
# --commands, each of its subcommands' --help becomes a COMMANDS section, so
# the page cannot fall behind the program.
#   make_man.sh PROGRAM SECTION OUTPUT "one-line description" [--commands]
set -euo pipefail
program=$1 section=$2 output=$3 description=$4
include=$(mktemp)
trap 'rm -f "$include"' EXIT
extra=()
if [ "${5:-}" = --commands ]; then
  extra=(--include "$include")
  echo "[COMMANDS]" >"$include"
  "$program" --help | sed -n '/^Subcommands:/,/^$/p' | awk 'NR > 1 && NF {print $1}' | while read -r command; do
    printf '.SS %s\n.nf\n' "$command"
    "$program" "$command" --help | sed -e 's/\\/\\e/g' -e 's/^\./\\\&./' -e 's/^'"'"'/\\\&'"'"'/'
    printf '.fi\n'
  done >>"$include"
fi
help2man --no-info --no-discard-stderr --section "$section" --name "$description" "${extra[@]}" \
  --output "$output" "$program"
