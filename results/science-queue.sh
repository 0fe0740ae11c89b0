#!/bin/sh
# The long sweeps of issues 13 and 15, one after the other (each resumable; rerunning this continues
# where it stopped, finished runs are skipped). Log: results/science-queue.log. Never time a benchmark
# while this runs (it keeps both cores busy). Order: the issue's first densities, Sup-tickets in the
# reference regime, the optional dstee-power arm on a 10k training subset (where dense overfits), then
# the second densities (dstee-power 0.01, itop-time 0.05).
cd "$(dirname "$0")/.."
# Finished, dropped from the loop so that a restart does not rewrite their reports (text-gpt 39/39,
# dstee-power 80/80 at both densities, itop-time 105/105 at both, suptickets-ref 40/40, dstee-power-subset 50/50):
# results/text-gpt/command.sh results/fmnist-mlp-dstee-power/command.sh results/fmnist-mlp-itop-time/command.sh
# results/fmnist-mlp-suptickets-ref/command.sh results/fmnist-mlp-dstee-power-subset/command.sh
# results/fmnist-mlp-dstee-power/command-then.sh results/fmnist-mlp-itop-time/command-then.sh (itop-time 105/105)
# Nothing is queued now; add a sweep's command file to the loop to run it.
for s in ; do
  echo "=== $(date -u +%FT%TZ) $s"
  sh "$s"
done
echo "=== $(date -u +%FT%TZ) done"
