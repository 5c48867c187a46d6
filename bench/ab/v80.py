"""v80 (bench/NOTES.md): per split launch of a layer_timing output run with CF_TIMELINE_BLOCKS=1, the norm's latency
(input loads to normed) over the blocks and its correlation with their entry, wait, index and end; the slowest and
fastest blocks. Usage: python3 bench/ab/v80.py <layer_timing output>..."""
import re
import statistics as st
import sys
def corr(a,b):
    n=len(a); ma=sum(a)/n; mb=sum(b)/n
    ca=sum((x-ma)*(y-mb) for x,y in zip(a,b)); va=sum((x-ma)**2 for x in a); vb=sum((y-mb)**2 for y in b)
    return ca/((va*vb)**0.5+1e-12)
for fn in sys.argv[1:]:
    txt=open(fn).read()
    r1=txt.split('### base round 1')[1].split('###')[0]
    split=r1.split('split timeline')[1].split('cooperative timeline')[0]
    kern=re.split(r'\n    (\S+) kernel, ',split)
    for i in range(1,len(kern),2):
        name=kern[i]; body=kern[i+1]
        rows=[]
        for m in re.finditer(r'      block +(\d+):(.*)',body):
            d=dict((k.strip(),float(v)) for k,v in re.findall(r' ([a-z ]+?) (-?[\d.]+),',m.group(2)))
            d['idx']=int(m.group(1)); rows.append(d)
        rows=[r for r in rows if 'input' in r and 'normed' in r and 'end' in r]
        if len(rows)<5: continue
        norm=[r['normed']-r['input'] for r in rows]
        wait=[r['waited']-r['entry'] for r in rows]
        late=[r['entry'] for r in rows]
        end=[r['end'] for r in rows]
        idx=[r['idx'] for r in rows]
        pw=[r['waited']-r.get('listed',r['entry']) for r in rows]
        print(f"{fn[:-4]:22s} {name:26s} n={len(rows)} norm med {st.median(norm):.2f} max {max(norm):.2f} | r(norm,entry) {corr(norm,late):+.2f} r(norm,wait len) {corr(norm,wait):+.2f} r(norm,idx) {corr(norm,idx):+.2f} r(norm,end) {corr(norm,end):+.2f} r(entry,end) {corr(late,end):+.2f}")
        # slow norms: list top 5
        top=sorted(rows,key=lambda r:-(r['normed']-r['input']))[:4]
        for r in top: print(f"      slow: block {r['idx']:3d} entry {r['entry']:.2f} waited {r['waited']:.2f} input {r['input']:.2f} normed {r['normed']:.2f} end {r['end']:.2f}")
        fast=sorted(rows,key=lambda r:(r['normed']-r['input']))[:3]
        for r in fast: print(f"      fast: block {r['idx']:3d} entry {r['entry']:.2f} waited {r['waited']:.2f} input {r['input']:.2f} normed {r['normed']:.2f} end {r['end']:.2f}")
