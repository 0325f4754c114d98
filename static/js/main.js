// The chat page's one entry point: each feature's module sets itself up, in an order where a module that
// listens to another (the list follows what the conversation opens) is ready first.
import * as attach from "./attach.js";
import * as chat from "./chat.js";
import * as settings from "./settings.js";
import * as shell from "./shell.js";
import * as sidebar from "./sidebar.js";
import * as speak from "./speak.js";
import * as talk from "./talk.js";
import * as voice from "./voice.js";
import { config } from "./page.js";

shell.init();
sidebar.init();
settings.init();
voice.init();
speak.init();
talk.init(config.speech);
chat.init();
attach.init(chat.newConversation);
