#!/usr/bin/env python3
"""Runs a command in a new pseudo-terminal, for tests that need a real terminal (the console).

    pty-run.py ROWS COLS CMD ARGS...

Copies this process's stdin to the terminal (keys) and the terminal's output to stdout. On
stderr, one line each: `pty: /dev/pts/N` (resize it with `stty -F /dev/pts/N rows R cols C`,
which sends SIGWINCH to the command), `stty-before: <stty -g>` before the command starts,
and, once it ended and its output is drained, `stty-after: <stty -g>` and `exit: <status>`
(128+N when signal N ended it). The terminal stays open until then, so its settings after
the command are what the command left.
"""
import fcntl, os, select, struct, subprocess, sys, termios

rows, cols, cmd = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
master, slave = os.openpty()
fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack('HHHH', rows, cols, 0, 0))
name = os.ttyname(slave)
def stty_g():
    return subprocess.run(['stty', '-g'], stdin=slave, capture_output=True, text=True).stdout.strip()
def err(line):
    sys.stderr.write(line + '\n')
    sys.stderr.flush()
err('pty: ' + name)
err('stty-before: ' + stty_g())
child = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                         preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
inputs = [master, sys.stdin.fileno()]
out = sys.stdout.buffer
def pump(timeout):
    r, _, _ = select.select(inputs, [], [], timeout)
    got = False
    for fd in r:
        try:
            data = os.read(fd, 65536)
        except OSError:
            data = b''
        if fd == master:
            if data:
                out.write(data)
                out.flush()
                got = True
        elif data:
            os.write(master, data)
        else:
            inputs.remove(fd)
    return got
while child.poll() is None:
    pump(0.2)
# What the command wrote just before it ended.
while pump(0.3):
    pass
err('stty-after: ' + stty_g())
rc = child.returncode
err('exit: %d' % (rc if rc >= 0 else 128 - rc))
