"""`coinfer-bench link`: the device and the cloud over a real, shaped link, prediction vs measurement.

    coinfer-bench link --model fmnist-vgg --rates 0.05 0.5 1 2 --quota 0.1 --limit 40 \
                       --schemes 1:8:4 3:16:2 --rate-change 0.05:2 --out /tmp/link

As root, for each rate: two network namespaces joined by a veth pair whose device->cloud
direction is shaped by tbf (`testbed.ShapedLink`), `coinfer-cloud serve` in the cloud
namespace, and `coinfer-device infer` in the device namespace under the CPU quota, once per
scheme (the listed ones plus device-only, cloud-only and auto). `auto` runs first and writes
its live profile (`--profile-out`): head times of the quota'd device, tails from the cloud's
server info, the round trip and the zstd ratios it learned.  Each scheme's prediction is
`planner.latency.LatencyModel` on that profile at the bandwidth the device measured.

Device processes enter only the device namespace's network (`nsenter --net`), not a new
mount namespace: `ip netns exec` remounts /sys, which hides /sys/fs/cgroup and so the CPU
quota.  Every child is stopped and both namespaces removed on success, failure or Ctrl-C.

Modules: `config` (what a run measures, the command lines), `processes` (children),
`predict` (latency model vs measurement), `measure` (each rate, the whole run),
`rate_change` (following a tc rate change), `markdown`, `plot`, `images`, `cli`.
"""
