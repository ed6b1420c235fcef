#!/bin/sh
# Runs `stagewise` where the platform can neither take exit 75 for success nor start a process
# again by its exit code (a Render background worker or cron job), and passes the platform's
# stop signal on to it. docs/operations.md ("Many runners, one run") says when to use it;
# tests/deploy.rs runs it.
#
#   stagewise-wrap.sh once run PIPELINE [OPTIONS]   one run; exit 75 is reported as 0
#   stagewise-wrap.sh loop run PIPELINE [OPTIONS]   run after run, until a stop signal
#
# `loop` starts the next run at once after exit 75 (interrupted, progress saved: it resumes),
# and STAGEWISE_WRAP_PAUSE seconds (default 60) after any other exit: 0 (done, or the source
# had nothing new), 1 (items failed), 2 (configuration), 3 (aborted) or a crash. Each exit is
# logged as one JSON line on stderr, like stagewise's own lines with `--log-format json`.
#
# In a container this script is PID 1, so the platform's SIGTERM reaches it, not stagewise. It
# passes SIGTERM, SIGINT and SIGHUP on to stagewise as SIGTERM (a shell starts a background
# command with SIGINT ignored), waits while stagewise drains, and exits with its code (`once`:
# 75 as 0). A plain `sh -c 'stagewise run …; …'` passes nothing on: the drain never starts and
# SIGKILL follows at the end of the platform's grace period.

set -u

usage() {
    echo "usage: $0 once|loop run PIPELINE [OPTIONS]" >&2
    exit 2
}

[ $# -ge 2 ] || usage
mode=$1
shift
case $mode in
once | loop) ;;
*) usage ;;
esac

pause=${STAGEWISE_WRAP_PAUSE:-60}
case $pause in
'' | *[!0-9]*)
    echo "$0: STAGEWISE_WRAP_PAUSE must be a whole number of seconds, is '$pause'" >&2
    exit 2
    ;;
esac

# One JSON line on stderr: level, message, exit code.
log() {
    printf '{"timestamp":"%s","level":"%s","message":"%s","exit_code":%d}\n' \
        "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$1" "$2" "$3" >&2
}

child=
stop=
on_signal() {
    stop=$1
    if [ -n "$child" ]; then kill -TERM "$child" 2>/dev/null; fi
}
trap 'on_signal SIGTERM' TERM
trap 'on_signal SIGINT' INT
trap 'on_signal SIGHUP' HUP

# Runs "$@" and waits for it through any number of signals; its exit code in $code. In the
# background, because a shell runs a trap only once its foreground command has exited.
start_and_wait() {
    "$@" &
    child=$!
    # A signal that came before $child was set has not been passed on yet.
    if [ -n "$stop" ]; then kill -TERM "$child" 2>/dev/null; fi
    while :; do
        wait "$child"
        code=$?
        # A trapped signal ends `wait` early, with a code above 128, while the child still
        # runs (drains); a child that has exited and been waited for is gone.
        kill -0 "$child" 2>/dev/null || break
    done
    child=
}

if [ "$mode" = once ]; then
    start_and_wait stagewise "$@"
    if [ "$code" -eq 75 ]; then
        log INFO "stagewise exited 75: interrupted, progress saved, the next run resumes; reported as 0" 75
        exit 0
    fi
    exit "$code"
fi

while [ -z "$stop" ]; do
    start_and_wait stagewise "$@"
    if [ -n "$stop" ]; then
        log INFO "stopped by $stop: stagewise exited $code" "$code"
        exit "$code"
    fi
    case $code in
    75)
        log INFO "interrupted, progress saved: running again now" 75
        continue
        ;;
    0) log INFO "the run finished: running again in ${pause}s" 0 ;;
    1) log WARN "the run finished with failed items (stagewise status lists them): running again in ${pause}s" 1 ;;
    2) log ERROR "configuration or usage error, nothing ran: trying again in ${pause}s" 2 ;;
    3) log ERROR "the run aborted, progress saved: trying again in ${pause}s" 3 ;;
    *) log ERROR "stagewise was killed or crashed: trying again in ${pause}s" "$code" ;;
    esac
    start_and_wait sleep "$pause"
done
log INFO "stopped by $stop between runs" 0
exit 0
