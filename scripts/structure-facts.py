#!/usr/bin/env python3
"""Structure facts of src/ (run from the repository root): import cycles between modules, the
longest functions in src/select/."""
import re, os, glob, itertools
files = glob.glob('src/**/*.rs', recursive=True)
files = [f for f in files if not f.startswith('src/cli/') and f != 'src/main.rs']
def modname(f):
    m = f[len('src/'):-3]
    m = m.replace('/mod', '').replace('/', '::')
    return 'crate' if m == 'lib' else 'crate::' + m
mods = {modname(f): f for f in files}
edges = {m: set() for m in mods}
for m, f in mods.items():
    text = open(f).read()
    text = re.sub(r'#\[cfg\(test\)\]\s*mod tests \{.*', '', text, flags=re.S)
    parent = m.rsplit('::', 1)[0]
    for ref in re.findall(r'\b(crate(?:::\w+)+|super(?:::\w+)+)', text):
        if ref.startswith('super'):
            base = parent if not mods.get(m, '').endswith('mod.rs') else m
            # super from a file module refers to its parent
            base = parent
            ref = base + ref[len('super'):]
        # longest module prefix
        parts = ref.split('::')
        target = None
        for i in range(len(parts), 0, -1):
            cand = '::'.join(parts[:i])
            if cand in mods:
                target = cand; break
        if target and target != m and not m.startswith(target + '::') and not target.startswith(m + '::'):
            edges[m].add(target)
# cycles between sibling/any modules
cycles = []
for a in edges:
    for b in edges[a]:
        if a in edges.get(b, ()):
            cycles.append(tuple(sorted((a, b))))
print('import circles (pairs):', sorted(set(cycles)) or 'none')
# function lengths in src/select
long = []
for f in glob.glob('src/**/*.rs', recursive=True) + glob.glob('python/src/**/*.rs', recursive=True):
    text = open(f).read()
    text = re.sub(r'#\[cfg\(test\)\]\s*mod tests \{.*', '', text, flags=re.S)
    lines = text.split('\n')
    for i, l in enumerate(lines):
        m = re.match(r'^(\s*)(pub(\([^)]*\))? )?(const |async |unsafe )*fn (\w+)', l)
        if m:
            depth = 0; started = False
            for j in range(i, len(lines)):
                code = re.sub(r'"(\\.|[^"\\])*"|\'(\\.|[^\'\\])\'|//.*', '', lines[j])
                depth += code.count('{') - code.count('}')
                if '{' in code: started = True
                if started and depth <= 0:
                    long.append((j - i + 1, f, m.group(5))); break
                if not started and code.rstrip().endswith(';'):
                    break
long.sort(reverse=True)
print('ten longest functions in src/ and python/src/ (tests excluded):')
for n, f, name in long[:10]:
    print(f'  {n:4d}  {f}  {name}')
print('functions over 80 lines:', sum(1 for n, _, _ in long if n > 80))
# strongly connected components (any length)
index = {}; low = {}; stack = []; on = set(); sccs = []; counter = [0]
import sys
sys.setrecursionlimit(10000)
def strong(v):
    index[v] = low[v] = counter[0]; counter[0] += 1; stack.append(v); on.add(v)
    for w in edges[v]:
        if w not in mods: continue
        if w not in index:
            strong(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop(); on.discard(w); comp.append(w)
            if w == v: break
        if len(comp) > 1: sccs.append(comp)
for v in mods:
    if v not in index: strong(v)
print('import cycles of any length:', sccs or 'none')
