/*
 * A remote function written with the official StateFun JavaScript SDK, for tests/sdk.rs.
 *
 * Usage: node functions.js PORT   (PORT 0 takes a free port)
 *
 * Prints `ready <port>` on stdout once it listens. The SDK's handler serves every path and
 * method (the runtime POSTs to the endpoint's urlPathTemplate).
 *
 * test/jscounter: ValueSpec `count` (int); each message adds 1 and replies `count=<n>` (a
 * string) to the caller, when there is one.
 */
"use strict";

const http = require("http");
const path = require("path");

// Installed by tests/sdk/setup.sh; resolved by absolute path so no NODE_PATH is needed.
const sdk = path.join(__dirname, "..", "..", "target", "sdk", "js", "node_modules", "apache-flink-statefun");
const { StateFun, messageBuilder } = require(sdk);

async function jscounter(context, message) {
    const count = (context.storage.count ?? 0) + 1;
    context.storage.count = count;
    const caller = context.caller;
    if (caller !== null) {
        context.send(messageBuilder({
            typename: caller.typename,
            id: caller.id,
            value: `count=${count}`,
            valueType: StateFun.stringType(),
        }));
    }
}

const statefun = new StateFun();
statefun.bind({
    typename: "test/jscounter",
    fn: jscounter,
    specs: [{ name: "count", type: StateFun.intType() }],
});

if (process.argv.length !== 3) {
    console.error("usage: node functions.js PORT");
    process.exit(2);
}
const server = http.createServer(statefun.handler());
server.listen(Number(process.argv[2]), "127.0.0.1", () => {
    process.stdout.write(`ready ${server.address().port}\n`);
});
