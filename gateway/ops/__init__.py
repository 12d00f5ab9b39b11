"""The operator's commands on the box, as functions: ``prepay status``, ``prepay topup``,
``prepay keys init``. `gateway.cli` parses their arguments and prints what they return."""
