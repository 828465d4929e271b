#!/usr/bin/env bash
# Runs a command at the lowest CPU priority, for background work that must
# only take what the foreground leaves idle (scripts/test.sh's static
# build). Start it with setsid, so the caller can stop it and every child
# with `kill -- -PID`.
#
# `nice` alone is not enough after setsid: a new session gets a scheduler
# autogroup of its own (kernel.sched_autogroup_enabled, on by default), and
# the kernel first shares the CPU between autogroups by the group's nice
# value, not the processes'. A nice-19 build in its own session at group
# nice 0 takes half of the CPU, as much as all the tests together.
echo 19 > /proc/self/autogroup 2>/dev/null || true
exec nice -n 19 "$@"
