// Burns two seconds of CPU in JIT-compiled JavaScript that calls into V8's builtins and C++
// (Array push and indexOf, JSON.stringify, Math.sin), then writes /proc/self/maps to the file
// named by its argument: run by check.sh under the preload library.
const fs = require('fs');

function burn() {
  let x = 0;
  for (let i = 0; i < 2000; i++) {
    const a = [];
    for (let j = 0; j < 20; j++) a.push(j * i);
    x += a.indexOf(19 * i) + JSON.stringify(a).length + Math.sqrt(i) * Math.sin(x);
  }
  return x;
}

let x = 0;
while (process.cpuUsage().user < 2e6) x += burn();
fs.writeFileSync(process.argv[2], fs.readFileSync('/proc/self/maps'));
console.log(`node busy done ${x > 0}`);
