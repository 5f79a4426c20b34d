// The Node socket.io server of the soak's storm row (tests/src/bin/soak.rs, SOAK_STORM=1):
// the header-trusting server of the Node suites (`welcome` with the user the gateway
// or HAProxy names in `x-auth-user`, `echo` acknowledged) with socket.io's defaults,
// on 127.0.0.1 at the port given as the only argument (0: any free one).
import { createServer } from "node:http";
import { headerTrustingServer } from "./harness.mjs";

const port = Number(process.argv[2] ?? 0);
const http = createServer();
headerTrustingServer(http);
http.listen(port, "127.0.0.1", () => {
  console.log(`listening on 127.0.0.1:${http.address().port}`);
});
