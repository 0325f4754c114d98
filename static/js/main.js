// The chat page's one entry point: each feature's module sets itself up, in an order where a module that
// listens to another (the list follows what the conversation opens) is ready first.
import * as chat from "./chat.js";
import * as settings from "./settings.js";
import * as shell from "./shell.js";
import * as sidebar from "./sidebar.js";
import * as voice from "./voice.js";

shell.init();
sidebar.init();
settings.init();
voice.init();
chat.init();
