# Podman with GPU passthrough on a GPU machine that has no container engine and no network: Podman 4.3
# from Debian's packages (podman, runc, conmon, catatonit, netavark, their libraries: docs/containers.md
# lists how to download them) unpacked under /opt/pod (never into /), root containers with runc and
# cgroupfs, storage on a tmpfs. Used by the GPU container proof (benchmarks/containers_gpu.py).
#
# usage: source benchmarks/podman_gpu_setup.sh DEBS_DIR
#   sets PODMAN (the command line), DOCKER_HOST (Podman's Docker-compatible API on a private socket),
#   JB_GPU_DEVICES (device nodes), JB_GPU_BINDS (driver folder), JB_GPU_ENV; writes a CDI spec to
#   /etc/cdi/nvidia.yaml; imports localhost/hostshell: a tiny image whose /usr (and /opt) the container
#   gets from the host, read-only, at run time (no registry needed).
_debs=${1:?folder holding the podman .debs}
mkdir -p /opt/pod /opt/pod/xlib
for f in "$_debs"/*.deb; do dpkg -x "$f" /opt/pod; done
for _i in 1 2 3; do   # link only the libraries the host lacks
  for b in /opt/pod/usr/bin/podman /opt/pod/usr/bin/conmon /opt/pod/usr/sbin/runc /opt/pod/usr/bin/catatonit /opt/pod/usr/lib/podman/netavark; do
    LD_LIBRARY_PATH=/opt/pod/xlib ldd "$b" 2>&1 | awk '/not found/{print $1}'
  done | sort -u | while read -r so; do
    f=$(find /opt/pod/lib /opt/pod/usr/lib -name "$so" 2>/dev/null | head -1)
    [ -n "$f" ] && ln -sf "$(readlink -f "$f")" "/opt/pod/xlib/$so"
  done
done
mountpoint -q /tmp/pod || { mkdir -p /tmp/pod && mount -t tmpfs -o size=90g tmpfs /tmp/pod; }
mkdir -p /tmp/pod/root /tmp/pod/run /tmp/pod/tmp /tmp/pod/net
cat > /opt/pod/containers.conf <<CONF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
netns = "none"
log_driver = "k8s-file"
seccomp_profile = "/opt/pod/usr/share/containers/seccomp.json"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
conmon_path = ["/opt/pod/usr/bin/conmon"]
conmon_env_vars = ["PATH=/opt/pod/usr/bin:/opt/pod/usr/sbin:/usr/sbin:/usr/bin:/sbin:/bin", "LD_LIBRARY_PATH=/opt/pod/xlib"]
helper_binaries_dir = ["/opt/pod/usr/lib/podman", "/opt/pod/usr/libexec/podman", "/opt/pod/usr/bin"]
init_path = "/opt/pod/usr/bin/catatonit"
image_copy_tmp_dir = "/tmp/pod/tmp"
tmp_dir = "/tmp/pod/tmp"
[engine.runtimes]
runc = ["/opt/pod/usr/sbin/runc"]
[network]
network_backend = "netavark"
network_config_dir = "/tmp/pod/net"
CONF
printf '[storage]\ndriver = "overlay"\ngraphroot = "/tmp/pod/root"\nrunroot = "/tmp/pod/run"\n' > /opt/pod/storage.conf
[ -e /etc/containers/policy.json ] || { mkdir -p /etc/containers && cp /opt/pod/etc/containers/policy.json /etc/containers/; }
export CONTAINERS_CONF=/opt/pod/containers.conf CONTAINERS_STORAGE_CONF=/opt/pod/storage.conf
export CONTAINERS_REGISTRIES_CONF=/opt/pod/etc/containers/registries.conf
export PATH=/opt/pod/usr/bin:/opt/pod/usr/sbin:$PATH
export LD_LIBRARY_PATH=/opt/pod/xlib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
PODMAN="podman --root /tmp/pod/root --runroot /tmp/pod/run --tmpdir /tmp/pod/tmp"
# GPU device nodes and the driver folder
_drvlib=$(dirname "$(ldconfig -p | awk '$1=="libcuda.so.1"{print $NF; exit}')")
case "$_drvlib" in /usr/local/nvidia/*) _drvdir=/usr/local/nvidia;; *) _drvdir=$_drvlib;; esac
JB_GPU_DEVICES=""; for d in /dev/nvidia[0-9]* /dev/nvidiactl /dev/nvidia-uvm /dev/nvidia-uvm-tools; do [ -c "$d" ] && JB_GPU_DEVICES="$JB_GPU_DEVICES $d"; done
JB_GPU_BINDS="$_drvdir"; JB_GPU_ENV="LD_LIBRARY_PATH=$_drvlib"
mkdir -p /etc/cdi
{ echo 'cdiVersion: "0.5.0"'; echo 'kind: nvidia.com/gpu'; echo 'devices:'
  for d in /dev/nvidia[0-9]*; do n=${d#/dev/nvidia}
    echo "- name: \"$n\""; echo '  containerEdits:'; echo '    deviceNodes:'; echo "    - path: $d"; done
  echo 'containerEdits:'; echo '  env:'; echo "  - $JB_GPU_ENV"; echo '  deviceNodes:'
  for d in /dev/nvidiactl /dev/nvidia-uvm /dev/nvidia-uvm-tools; do [ -c "$d" ] && echo "  - path: $d"; done
  echo '  mounts:'; echo "  - hostPath: $_drvdir"; echo "    containerPath: $_drvdir"; echo '    options: ["ro", "nosuid", "nodev", "bind"]'
} > /etc/cdi/nvidia.yaml
# a tiny image: the host's /usr (and /opt/torch) are bound read-only at run time
if ! $PODMAN image exists localhost/hostshell 2>/dev/null; then
  _r=/tmp/pod/tiny; rm -rf $_r; mkdir -p $_r/etc $_r/opt $_r/tmp $_r/root $_r/var/tmp $_r/home $_r/usr $_r/dev $_r/proc $_r/sys $_r/run
  chmod 1777 $_r/tmp $_r/var/tmp
  for d in bin lib lib64 sbin; do [ -L /$d ] && cp -P /$d $_r/$d; done
  cp -a /etc/passwd /etc/group /etc/ld.so.cache /etc/ld.so.conf /etc/ld.so.conf.d /etc/alternatives /etc/nsswitch.conf $_r/etc/
  tar -C $_r -cf /tmp/pod/tiny.tar . && $PODMAN import --change 'CMD ["/bin/sh"]' /tmp/pod/tiny.tar localhost/hostshell >/dev/null
fi
rm -f /tmp/pod/api.sock
$PODMAN system service --time=0 unix:///tmp/pod/api.sock >/tmp/pod/service.log 2>&1 &
for _i in $(seq 1 100); do [ -S /tmp/pod/api.sock ] && break; sleep 0.1; done
export DOCKER_HOST=unix:///tmp/pod/api.sock PODMAN JB_GPU_DEVICES JB_GPU_BINDS JB_GPU_ENV
echo "podman ready: DOCKER_HOST=$DOCKER_HOST; GPU devices:$JB_GPU_DEVICES; driver bind: $JB_GPU_BINDS"
