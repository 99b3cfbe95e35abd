from twisted.application.service import ServiceMaker

fanout_tx = ServiceMaker(
    "fanout_tx",
    "fanout_tx.tap",
    "Real-time push server: GRIP proxy, publish inputs and transports in one reactor",
    "fanout",
)
