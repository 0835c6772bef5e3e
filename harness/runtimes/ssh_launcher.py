"""Runs on an ssh host, with the host's own python3 (stdlib only): starts, signals and sweeps
the processes of the harness's clusters, so no command line is ever assembled in a shell.

    launcher.py hello                       -> {"python": [3, 11], "uid": 0}
    launcher.py spawn ROOT LABEL < request  -> {"pid": P, "start_time": T}
    launcher.py signal ROOT LABEL PID START SIGNUM
    launcher.py ports < [[host, port], ...] -> the ones something already listens on
    launcher.py list ROOT LABEL             -> pids of live processes of the cluster
    launcher.py sweep ROOT LABEL...         -> kills them all and removes ROOT/LABEL

`spawn` reads {"name", "argv", "env", "log", "cwd"} as JSON. The process runs in a session
of its own (signals go to its group), its output appended to `log`. A supervisor (this
script, with the label in its argv) waits for it and writes its exit status to
ROOT/LABEL/procs/PID.exit, which the harness reads over SFTP; ROOT/LABEL/procs/PID.json
records pid and start time, so a recycled pid is never signalled.
"""

import json
import os
import signal
import socket
import sys
import time

LABEL_ENV = b"HSTREAM_CONFORMANCE_CLUSTER="


def start_time(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])


def write_atomic(path, text):
    with open(path + ".tmp", "w") as out:
        out.write(text)
    os.replace(path + ".tmp", path)


def spawn(root, label):
    request = json.load(sys.stdin)
    procs = os.path.join(root, label, "procs")
    os.makedirs(procs, exist_ok=True)
    os.makedirs(os.path.dirname(request["log"]), exist_ok=True)
    if os.path.exists(request["log"]) and os.path.getsize(request["log"]):
        with open(request["log"], "a") as log:
            log.write(f"\n=== harness: restarting {request['name']} at {time.ctime()} ===\n")
    info_r, info_w = os.pipe()
    middle = os.fork()
    if middle == 0:
        # Detach from the ssh session twice over, so closing it never signals the process.
        os.setsid()
        if os.fork() == 0:
            os.close(info_r)
            supervise(request, procs, info_w)
        os._exit(0)
    os.close(info_w)
    with os.fdopen(info_r) as info:
        answer = info.read()
    os.waitpid(middle, 0)
    print(answer)
    return 1 if json.loads(answer or '{"error": "the supervisor died"}').get("error") else 0


def supervise(request, procs, info_w):
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)  # the ssh channel ends once nobody holds its stdout
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.dup2(log, 1)
            os.dup2(log, 2)
            os.chdir(request.get("cwd") or "/")
            env = dict(os.environ)
            env.update(request["env"])
            os.execvpe(request["argv"][0], request["argv"], env)
        except Exception as exc:
            os.write(err_w, f"cannot run {request['argv'][0]}: {exc}".encode())
        os._exit(127)
    os.close(err_w)
    with os.fdopen(err_r, "rb") as err:
        error = err.read().decode(errors="replace") or None  # empty: exec succeeded
    record = {"pid": pid, "start_time": start_time(pid), "name": request["name"],
              "supervisor": os.getpid(), "error": error}
    write_atomic(os.path.join(procs, f"{pid}.json"), json.dumps(record))
    with os.fdopen(info_w, "w") as info:
        info.write(json.dumps(record))
    _, status = os.waitpid(pid, 0)
    code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    write_atomic(os.path.join(procs, f"{pid}.exit"), str(code))
    os._exit(0)


def send(pid, start, signum):
    """Signal pid's group (or pid alone, if it leads none) only if it is still that process."""
    if start is None or start_time(pid) != start:
        return 0
    try:
        os.killpg(pid, signum)
    except OSError:
        try:
            os.kill(pid, signum)
        except OSError:
            pass
    return 0


def labelled(root, label):
    """Live pids of a cluster: recorded ones still matching, and any carrying its label."""
    found = set()
    procs = os.path.join(root, label, "procs")
    for name in os.listdir(procs) if os.path.isdir(procs) else []:
        if name.endswith(".json"):
            try:
                with open(os.path.join(procs, name)) as f:
                    record = json.load(f)
            except (OSError, ValueError):
                continue
            if record.get("start_time") and start_time(record["pid"]) == record["start_time"]:
                found.add(record["pid"])
    wanted_env = LABEL_ENV + label.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        supervisor = b"spawn" in argv and label.encode() in argv
        if (wanted_env in env or supervisor) and start_time(int(entry)) is not None:
            found.add(int(entry))
    return sorted(found)


def sweep(root, labels):
    import shutil

    for label in labels:
        pids = labelled(root, label)
        for sig in (signal.SIGCONT, signal.SIGTERM):  # a stopped process cannot handle TERM
            for pid in pids:
                send(pid, start_time(pid), sig)
        deadline = time.time() + 3
        while time.time() < deadline and any(start_time(p) for p in pids):
            time.sleep(0.05)
        for pid in labelled(root, label):
            send(pid, start_time(pid), signal.SIGKILL)
        shutil.rmtree(os.path.join(root, label), ignore_errors=True)
        print(json.dumps({"label": label, "killed": pids}))
    return 0


def busy_ports():
    busy = []
    for host, port in json.load(sys.stdin):
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError:
                busy.append([host, port])
    print(json.dumps(busy))
    return 0


def main(argv):
    command, args = argv[0], argv[1:]
    if command == "hello":
        print(json.dumps({"python": list(sys.version_info[:2]), "uid": os.getuid()}))
        return 0
    if command == "spawn":
        return spawn(args[0], args[1])
    if command == "signal":
        return send(int(args[2]), int(args[3]), int(args[4]))
    if command == "ports":
        return busy_ports()
    if command == "list":
        print(json.dumps(labelled(args[0], args[1])))
        return 0
    if command == "sweep":
        return sweep(args[0], args[1:])
    print(f"unknown command {command!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
