// The Restate side of perf/restate/run: the counter of statefun-rs's `example/counter` as a
// Restate virtual object. `POST /counter/{key}/add` with a JSON number adds it to the key's
// `count` and answers the new total. Serves HTTP/2 (Restate's bidirectional protocol) on
// 127.0.0.1 only, at the port given as the first argument.
import * as http2 from "node:http2";
import * as restate from "@restatedev/restate-sdk";

const counter = restate.object({
  name: "counter",
  handlers: {
    add: async (ctx, delta) => {
      const count = ((await ctx.get("count")) ?? 0) + delta;
      ctx.set("count", count);
      return count;
    },
  },
});

const port = Number(process.argv[2] ?? 9080);
http2
  .createServer(restate.createEndpointHandler({ services: [counter] }))
  .listen(port, "127.0.0.1", () => console.log(`counter service on http://127.0.0.1:${port}`));
