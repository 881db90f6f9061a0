"""The static parts of the shareable report: its CSS and the small script behind the example matrix.

Kept apart from ``report.py`` so the assembly reads as steps. The script uses no library and no
network: it reads the matrix data from a ``<script type="application/json">`` block and renders the
filtered page of rows into a table (filters: changed between two columns, regressions against the
first column, still failing, parse or LM errors; a text search; 100 rows a page).
"""

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1200px;color:#222;padding:0 16px}
h1{margin-bottom:4px}h2{margin-top:36px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f5f5f5}.muted{color:#777}.small{font-size:12px}
pre{background:#f7f7f7;padding:8px;overflow:auto;max-height:360px;font-size:12px;white-space:pre-wrap}
.pass{background:#e3f6e3;text-align:center}.fail{background:#fde2e2;text-align:center}
.err{background:#fff1cc;text-align:center}.none{background:#eee;text-align:center}
#matrix tbody tr{cursor:pointer}#matrix tbody tr:hover{background:#f0f6ff}
.controls{display:flex;gap:12px;flex-wrap:wrap;align-items:center;margin:8px 0}
.diff{background:#fafafa;border:1px solid #eee;padding:8px;white-space:pre-wrap;font-size:13px}
.badge{display:inline-block;padding:1px 6px;border-radius:8px;background:#eef;font-size:12px}
"""

MATRIX_JS = r"""
(function(){
  const data = JSON.parse(document.getElementById('matrix-data').textContent);
  const $ = (id) => document.getElementById(id);
  const PAGE = 100;
  let page = 0;
  function esc(s){return String(s==null?'':s).replace(/[&<>"]/g,c=>({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]));}
  function split(){return data.splits[$('m-split').value];}
  function fillColumns(){
    const cols = split().columns;
    for (const id of ['m-a','m-b']) {
      const sel = $(id); sel.innerHTML = '';
      cols.forEach((c,i)=>{const o=document.createElement('option');o.value=i;o.textContent=c;sel.appendChild(o);});
    }
    $('m-a').value = 0; $('m-b').value = Math.max(0, cols.length-1);
  }
  function passed(cell){return cell ? cell[0] : null;}
  function keep(row){
    const f = $('m-filter').value, a = +$('m-a').value, b = +$('m-b').value;
    const c = row.cells;
    if (f === 'changed' && passed(c[a]) === passed(c[b])) return false;
    if (f === 'regressions' && !(passed(c[0]) === 1 && passed(c[b]) !== 1)) return false;
    if (f === 'still_failing' && !(passed(c[0]) !== 1 && passed(c[b]) !== 1)) return false;
    if (f === 'errors' && !c.some(x => x && x[2])) return false;
    const q = $('m-search').value.trim().toLowerCase();
    if (q && !(row.inputs + ' ' + row.gold + ' ' + row.out.join(' ')).toLowerCase().includes(q)) return false;
    return true;
  }
  function cellHtml(cell){
    if (!cell) return '<td class="none">-</td>';
    if (cell[2]) return '<td class="err" title="'+esc(cell[2])+' error">&#9888; '+esc(cell[2])+'</td>';
    const s = cell[1]==null ? '' : ' '+(+cell[1]).toFixed(2);
    return cell[0]===1 ? '<td class="pass">&#10003;'+s+'</td>' : '<td class="fail">&#10007;'+s+'</td>';
  }
  function render(){
    const sp = split();
    const rows = sp.rows.filter(keep);
    const pages = Math.max(1, Math.ceil(rows.length / PAGE));
    page = Math.min(page, pages-1);
    $('m-count').textContent = rows.length + ' of ' + sp.rows.length + ' examples; page ' + (page+1) + ' of ' + pages;
    let h = '<thead><tr><th>#</th><th>inputs</th><th>gold</th>' + sp.columns.map(c=>'<th>'+esc(c)+'</th>').join('') + '</tr></thead><tbody>';
    for (const r of rows.slice(page*PAGE, (page+1)*PAGE)) {
      h += '<tr data-i="'+r.i+'"><td>'+r.i+'</td><td>'+esc(r.inputs.slice(0,140))+'</td><td>'+esc(r.gold)+'</td>' + r.cells.map(cellHtml).join('') + '</tr>';
    }
    $('matrix').innerHTML = h + '</tbody>';
    for (const tr of $('matrix').querySelectorAll('tbody tr')) tr.onclick = () => detail(+tr.dataset.i);
  }
  function detail(i){
    const sp = split();
    const r = sp.rows.find(x => x.i === i);
    let h = '<h3>Example '+i+'</h3><p><b>inputs</b></p><pre>'+esc(r.inputs)+'</pre><p><b>gold</b></p><pre>'+esc(r.gold)+'</pre><table><tr><th>column</th><th>result</th><th>outputs</th></tr>';
    sp.columns.forEach((c,k)=>{ h += '<tr><td>'+esc(c)+'</td>'+cellHtml(r.cells[k])+'<td><pre>'+esc(r.out[k]||'')+'</pre></td></tr>'; });
    $('m-detail').innerHTML = h + '</table>';
  }
  for (const id of ['m-filter','m-a','m-b']) $(id).onchange = () => {page=0; render();};
  $('m-split').onchange = () => {page=0; fillColumns(); render();};
  $('m-search').oninput = () => {page=0; render();};
  $('m-prev').onclick = () => {page=Math.max(0,page-1); render();};
  $('m-next').onclick = () => {page=page+1; render();};
  fillColumns(); render();
})();
"""
