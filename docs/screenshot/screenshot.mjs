// The MLflow UI's runs table of an experiment, as a PNG (make screenshot; docs/screenshot/run.py starts
// the UI and calls this). Playwright (npm playwright-core, package.json here) drives Debian's chromium.
//
//   node docs/screenshot/screenshot.mjs --url 'http://127.0.0.1:5000/#/experiments/1?workflowType=machine_learning' \
//        --out docs/mlflow_runs_table.png [--metrics summary/l2,summary/msssim] [--hide Dataset,Source,Models]
//        [--expand] [--widen 50] [--crop 520] [--chromium /usr/bin/chromium] [--timeout 180]
//
// Fails (exit 1) unless the page opens on the model-training view: the runs table, not the GenAI
// pages ("Send your first trace"). Then: closes the assistant panel, hides the --hide attribute
// columns and shows the --metrics columns through the column picker, expands the parent runs
// (--expand: the grid's member runs appear under their parent), widens Run Name and each metric column by --widen
// pixels, and saves the page (its top --crop pixels, when given).
import { chromium } from 'playwright-core';

function args(argv) {
  const out = { metrics: 'summary/l2,summary/msssim,summary/swd,summary/dist_w', hide: 'Dataset,Source,Models',
                expand: false, chromium: process.env.CHROMIUM || '/usr/bin/chromium', timeout: '180',
                width: '1600', height: '900', widen: '50', crop: '0' };
  for (let i = 0; i < argv.length; i++) {
    const key = argv[i].replace(/^--/, '');
    if (key === 'expand') out.expand = true;
    else out[key] = argv[++i];
  }
  if (!out.url || !out.out) throw new Error('usage: screenshot.mjs --url URL --out PNG [--metrics a,b] [--hide A,B] [--expand]');
  return out;
}

const opt = args(process.argv.slice(2));
const list = (s) => (s ? s.split(',').map((x) => x.trim()).filter(Boolean) : []);
const timeout = Number(opt.timeout) * 1000;

const browser = await chromium.launch({ executablePath: opt.chromium, args: ['--no-sandbox'] });
try {
  const page = await browser.newPage({ viewport: { width: Number(opt.width), height: Number(opt.height) } });
  await page.goto(opt.url, { timeout });
  const runsTable = page.getByTestId('sort-header-Run Name');
  const genai = page.getByText('Send your first trace');
  await Promise.race([runsTable.waitFor({ timeout }), genai.waitFor({ timeout })]);
  if (await genai.count()) throw new Error(`${opt.url} opened on the GenAI page ("Send your first trace"), not the runs table`);
  console.log('training view: the runs table');

  const close = page.getByRole('button', { name: 'Close', exact: true });   // the MLflow Assistant panel
  if (await close.count()) await close.first().click();

  await page.getByTestId('column-selection-dropdown').filter({ hasText: 'Columns' }).click();
  const panel = page.getByTestId('column-selector-panel');
  await panel.waitFor();
  const search = panel.getByPlaceholder('Search columns');
  const toggle = async (name, want) => {
    await search.fill(name);
    const node = panel.locator('.du-bois-light-tree-treenode').filter({
      has: page.locator('.du-bois-light-tree-title').getByText(name, { exact: true }) });
    await node.first().waitFor({ timeout: 10000 });
    const box = node.first().locator('.du-bois-light-tree-checkbox');
    const checked = (await box.getAttribute('class')).includes('checkbox-checked');
    if (checked !== want) await box.click();
    console.log(`column ${name}: ${want ? 'shown' : 'hidden'}`);
  };
  for (const name of list(opt.hide)) await toggle(name, false);
  for (const name of list(opt.metrics)) await toggle(name, true);
  await search.fill('');
  await page.keyboard.press('Escape');
  await panel.waitFor({ state: 'hidden' });

  if (opt.expand) {
    const expanders = page.locator('button[data-component-id*="runnamecellrenderer"]');
    for (let i = 0; i < await expanders.count(); i++) await expanders.nth(i).click();
  }
  for (const name of ['Run Name', ...list(opt.metrics)]) {   // wide enough for the header and more digits
    await page.getByTestId(`sort-header-${name}`).first().waitFor({ timeout: 10000 });
    if (Number(opt.widen) > 0) {   // drag the header's resize handle (ag-grid)
      const handle = page.locator(`.ag-header-cell[col-id*="${name}"] .ag-header-cell-resize`).first();
      await handle.hover();
      const box = await handle.boundingBox();
      await page.mouse.down();
      await page.mouse.move(box.x + box.width / 2 + Number(opt.widen), box.y + box.height / 2, { steps: 10 });
      await page.mouse.up();
    }
  }
  await page.waitForTimeout(1500);   // cells render after the headers
  const height = Number(opt.crop) > 0 ? Math.min(Number(opt.crop), Number(opt.height)) : Number(opt.height);
  await page.screenshot({ path: opt.out, clip: { x: 0, y: 0, width: Number(opt.width), height } });
  console.log(`saved ${opt.out}`);
} finally {
  await browser.close();
}
