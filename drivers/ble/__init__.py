"""BLE water dispensers: our GATT profile (`gatt`), its config (`config`) and the bleak adapter
(`dispenser`). Only this package imports bleak and bleak-retry-connector, and only from
`dispenser`: nothing is imported here, so a site without dispensers never loads them."""
