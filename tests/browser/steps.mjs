// Runs named test steps in order, printing "ok" or "FAIL" with the stack for each, and
// returns how many failed: one failing step does not hide what the next ones show.
export async function runSteps(steps, label) {
  let passed = 0;
  let failed = 0;
  for (const [name, run] of steps) {
    try {
      await run();
      passed++;
      console.log("ok   " + name);
    } catch (e) {
      failed++;
      console.log("FAIL " + name + "\n     " + String(e.stack ?? e).split("\n").join("\n     "));
    }
  }
  console.log(`${label}: ${passed} passed, ${failed} failed`);
  return failed;
}
