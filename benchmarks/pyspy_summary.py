"""Summarise `py-spy record --format raw`: shares of busy samples (idle waits dropped) per function and line.

    python benchmarks/pyspy_summary.py prof.txt [top]
"""
import sys, re, collections
IDLE = ('_worker (concurrent/futures/thread.py', 'select (selectors.py', 'Condition.wait', 'wait (threading.py', '_wait_for_tstate_lock')
self_c, incl, line_c = collections.Counter(), collections.Counter(), collections.Counter()
tot = idle = 0
for line in open(sys.argv[1]):
    stack, _, n = line.rstrip().rpartition(' ')
    n = int(n)
    frames = [f for f in stack.split(';') if not f.startswith(('process ', 'thread '))]
    if not frames: continue
    if any(frames[-1].startswith(i) or i in frames[-1] for i in IDLE):
        idle += n; continue
    tot += n
    fn = lambda f: re.sub(r'\((?:.*/)?((?:actdb|numpy|pyarrow|zarr)/[^:]*|[^/:]*):\d+\)', r'(\1)', f)
    self_c[fn(frames[-1])] += n
    line_c[re.sub(r'\(.*/(actdb/)', r'(\1', frames[-1])] += n
    for f in {fn(f) for f in frames}: incl[f] += n
top = int(sys.argv[2]) if len(sys.argv) > 2 else 15
print(f'busy samples {tot} (idle {idle} dropped)')
print('self time by function:'); [print(f'  {100*c/tot:5.1f}%  {f}') for f, c in self_c.most_common(top)]
print('inclusive, actdb functions:'); [print(f'  {100*c/tot:5.1f}%  {f}') for f, c in incl.most_common(400) if f.endswith(".py)")][:top]
print('self time by line:'); [print(f'  {100*c/tot:5.1f}%  {f}') for f, c in line_c.most_common(top)]
