// A worker in Node.js (18+) for a workers service, with fetch alone: it takes jobs of the
// given types (a long poll), beats while each runs, and reports done or fail by the
// attempt's token. The protocol is the HTTP API's worker verbs (docs/remote.md).
//
//   WORKERS_URL=http://127.0.0.1:8181 WORKERS_TOKEN=... node worker.mjs EchoJob [more types]
//
// SIGTERM or Ctrl-C: take no more jobs, finish the running ones, then exit.

const url = process.env.WORKERS_URL;
const token = process.env.WORKERS_TOKEN;
const types = process.argv.slice(2);
const concurrency = Number(process.env.WORKERS_THREADS || 2);
const name = process.env.WORKERS_NAME || `node-${process.pid}`;
if (!url || !token || types.length === 0) {
  console.error("usage: WORKERS_URL=... WORKERS_TOKEN=... node worker.mjs TYPE [TYPE...]");
  process.exit(2);
}

// The handlers, by job type: return the result, or throw to fail the attempt.
const handlers = {
  async EchoJob(job, report) {
    await report("progress", { completed: 1, total: 2 });
    await report("log", { message: "echoing from node" });
    return { echo: job.params.echo ?? null, pid: process.pid, attempt: job.attempt, by: "node" };
  },
};

let stopping = false;
let running = 0;
process.on("SIGTERM", () => { stopping = true; });
process.on("SIGINT", () => { stopping = true; });

async function call(path, body) {
  const response = await fetch(url + path, {
    method: "POST",
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  const answer = await response.json().catch(() => null);
  return { status: response.status, answer };
}

async function run(job) {
  const report = (verb, body) => call(`/api/work/${job.id}/${verb}`, { token: job.token, ...body });
  const beat = setInterval(() => report("beat", {}), (job.lease * 1000) / 3);
  try {
    const handler = handlers[job.type];
    if (!handler) throw new Error(`no handler for ${job.type}`);
    const result = await handler(job, report);
    await report("done", { result });
  } catch (error) {
    await report("fail", {
      error: { message: String(error.message || error), type: error.name || "Error", traceback: error.stack || null },
    });
  } finally {
    clearInterval(beat);
  }
}

while (!stopping) {
  const free = concurrency - running;
  if (free < 1) {
    await new Promise((resolve) => setTimeout(resolve, 50));
    continue;
  }
  let taken;
  try {
    taken = await call("/api/work", { types, max: free, wait: 5, worker: name });
  } catch (error) {
    console.error(`could not take jobs: ${error.message}; trying again in 2 s`);
    await new Promise((resolve) => setTimeout(resolve, 2000));
    continue;
  }
  if (taken.status !== 200) {
    console.error(`the service refused: ${taken.status} ${JSON.stringify(taken.answer)}`);
    process.exit(1);
  }
  for (const job of taken.answer.jobs) {
    running += 1;
    run(job).finally(() => { running -= 1; });
  }
}
while (running > 0) await new Promise((resolve) => setTimeout(resolve, 50));
console.error(`${name} stopped`);
