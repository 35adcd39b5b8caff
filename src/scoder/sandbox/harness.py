"""The harness: the program every sandboxed process runs, around the model's code.

It is not imported in the sandbox: this file's source is the program (`python -I -S -c <source>`,
see `scoder.sandbox.isolation`), and `_harness` runs it. `_harness` reads the job from stdin (then
swaps stdin for /dev/null), sets the rlimits, and hands `run` two functions: `report`, which writes
a record, tagged with the run's random nonce, to a dedicated pipe (the program never sees the nonce
on any channel it writes to), and `finish`, which flushes, kills what the program left behind (when
the run has a uid of its own), reports the final record and exits. `run` compiles and runs the
solution (optimize=0: asserts stay), then the test statements one at a time. Imported (the unit
tests do), the module only defines them, and `run` can be called with any `report` and `finish`.

The records, each one line:

    R                  the harness is running
    S                  the solution ran
    D <i> 1            statement i (a test) passed
    D <i> 0 <what>     it failed: the exception
    D <i> m <what>     it ran out of memory
    E <kind> <i> <what>   the final record; kind is ok, compile, exit, memory, solution or
                       setup; i is the statement, "-" for the solution

Because the sample runs in this very interpreter:

- Only builtin modules plus `resource` are imported: every import is paid once per program, and
  no `from __future__` either (it imports a module).
- Everything needed after the sample's code has run is captured first, as locals of the function
  that needs it: a sample can `import __main__` and rebind this module's globals, so a module-level
  name looked up after that would be the sample's.
- builtins are restored, and trace and profile hooks cleared, before every statement.
- Only the original process reports: a fork of the program that runs on into harness code exits.
"""


def run(source, plan, report, finish):
    """Run `source` (the solution) as a module named "solution", then each `(is_test, code)` of
    `plan` as the main script, in the solution's namespace. `report` gets every record but the
    last, `finish` the last; in the sandbox `finish` never returns, elsewhere `run` then returns
    what it returned."""
    import builtins
    import sys

    S, exact, replace = str, str.__str__, str.replace
    BaseExc, MemErr, SysExit = BaseException, MemoryError, SystemExit
    isinst, typ, execute, comp, enum = isinstance, type, exec, compile, enumerate
    bdict = builtins.__dict__
    pristine = dict(bdict)
    dclear, dupdate = dict.clear, dict.update
    settrace, setprofile = sys.settrace, sys.setprofile

    def desc(e):
        # whatever the exception's class and __str__ do (they are the sample's): one short line
        try:
            name = typ(e).__name__
            name = exact(name) if isinst(name, S) else "?"
        except BaseExc:
            name = "?"
        try:
            text = exact(S(e))
        except BaseExc:
            text = ""
        if text:
            name = name + ": " + text
        return replace(replace(name[:300], "\n", " "), "\r", " ")

    report("R")
    # the solution runs like an imported module (its `if __name__ == "__main__":` demo, often an
    # input() loop, stays out); the tests run as the main script
    scope = {"__name__": "solution", "__builtins__": builtins}
    try:
        code = comp(source, "<solution>", "exec", 0, True, 0)
    except BaseExc as e:
        return finish("E compile - " + desc(e))
    try:
        execute(code, scope)
    except SysExit as e:
        return finish("E exit - " + desc(e))
    except BaseExc as e:
        return finish(("E memory - " if isinst(e, MemErr) else "E solution - ") + desc(e))
    report("S")
    code = None
    scope["__name__"] = "__main__"
    for i, (is_test, stmt) in enum(plan):
        dclear(bdict)
        dupdate(bdict, pristine)
        scope["__builtins__"] = builtins
        settrace(None)
        setprofile(None)
        try:
            execute(stmt, scope)
        except BaseExc as e:
            mem = isinst(e, MemErr)
            if not is_test:
                if isinst(e, SysExit):
                    return finish(f"E exit {i} " + desc(e))
                return finish((f"E memory {i} " if mem else f"E setup {i} ") + desc(e))
            report((f"D {i} m " if mem else f"D {i} 0 ") + desc(e))
        else:
            report(f"D {i} 1")
    return finish("E ok -")


def _harness():
    import marshal
    import posix
    import sys

    read, write, _exit, getpid, kill = (
        posix.read,
        posix.write,
        posix._exit,
        posix.getpid,
        posix.kill,
    )
    chunks = []
    while True:
        chunk = read(0, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
    nonce, fd, cwd, limits, sweep, source, plan = marshal.loads(b"".join(chunks))
    del chunks
    null = posix.open("/dev/null", posix.O_RDONLY)
    posix.dup2(null, 0)
    posix.close(null)
    posix.set_inheritable(fd, False)
    posix.chdir(cwd)
    import resource

    for which, soft, hard in limits:
        current = resource.getrlimit(which)[1]
        if current != resource.RLIM_INFINITY:
            hard = min(hard, current)
            soft = min(soft, hard)
        resource.setrlimit(which, (soft, hard))
    del resource

    me = getpid()
    encode, BaseExc = str.encode, BaseException
    flushes = (sys.stdout.flush, sys.stderr.flush)
    head = nonce + " "

    def report(line):
        if getpid() != me:  # a fork of the program reached harness code: only the original reports
            _exit(0)
        data = encode(head + line + "\n", "utf-8", "replace")
        while data:
            data = data[write(fd, data) :]

    def finish(line):
        # (try/except, not contextlib.suppress: nothing but builtin modules is imported here)
        for flush in flushes:
            try:  # noqa: SIM105
                flush()
            except BaseExc:
                pass
        if sweep and getpid() == me:
            # this run has its own uid: kill(-1) reaches every other process of it
            try:  # noqa: SIM105
                kill(-1, 9)
            except BaseExc:
                pass
        report(line)
        _exit(0)

    run(source, plan, report, finish)


if __name__ == "__main__":
    _harness()
