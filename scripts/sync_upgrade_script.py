#!/usr/bin/env python3
# Release helper (docs/operations.md, "Making a release"): copies into the update script the
# current definition, from sql/*.sql and src/**/*.sql, of every function or procedure the script creates, so that
# one changed again after it was written is not left behind. Run from the repository's root.
import glob
import re

FILES=[f for f in sorted(glob.glob('sql/*.sql')) if not f.startswith('sql/lacaja_analytics--')]+sorted(glob.glob('src/**/*.sql', recursive=True))
src={f:open(f).read() for f in FILES}
p=sorted(glob.glob('sql/lacaja_analytics--*--*.sql'))[-1]
s=open(p).read()
def src_block(kind,name):
    pat=re.compile(r'^CREATE '+kind+r' '+re.escape(name)+r'\(', re.M)
    hits=[(f,m) for f in FILES for m in pat.finditer(src[f])]
    if len(hits)!=1: return None
    f,m=hits[0]; t=src[f][m.start():]
    # SQL-standard bodies (BEGIN ATOMIC) are kept by hand
    if 'BEGIN ATOMIC' in t[:t.find('$$') if '$$' in t else len(t)]: return None
    return t[:t.index('\n$$;\n')+5]
out=s; n=0
for m in re.finditer(r'^CREATE (OR REPLACE )?(FUNCTION|PROCEDURE) ([\w.]+)\(', s, re.M):
    name=m.group(3); kind=m.group(2)
    b=src_block(kind,name)
    if b is None: continue
    cur=s[m.start():]; cur=cur[:cur.index('\n$$;\n')+5]
    new=b.replace('CREATE '+kind,'CREATE OR REPLACE '+kind,1) if m.group(1) else b
    if cur!=new: out=out.replace(cur,new); n+=1; print('synced',name)
open(p,'w').write(out)
