#!/bin/sh
# Clobi agent bootstrap, run once by cloud-init as the instance's user-data.
#
# It holds where to join, this machine's slots, and one single-use bootstrap token, which the
# agent spends when it joins: a process that reads this user-data later (through the instance
# metadata service) finds a token that no longer works. Nothing else secret is here: the agent
# gets its own pool-scoped token from the server, and never any cloud or database credentials.
#
# The image must have Clobi installed for the interpreter below (`python -m clobi`).
# The agent runs in the foreground, so its output lands in /var/log/cloud-init-output.log;
# when it has drained and exited, the manager terminates the machine.
set -eu
umask 077

dir="${CLOBI_HOME:-/var/lib/clobi}"
mkdir -p "$dir"
cd "$dir"
export HOME="${HOME:-$dir}"
export XDG_CACHE_HOME="$dir/cache"
export XDG_CONFIG_HOME="$dir/config"

token_file="$dir/bootstrap.token"
rm -f "$token_file"
# printf is a shell builtin: the token appears in no process's argv
printf '%s\n' @TOKEN@ > "$token_file"
chmod 600 "$token_file"

exec @PYTHON@ -m clobi agent --join @URL@ --token-file "$token_file" @SLOTS@
