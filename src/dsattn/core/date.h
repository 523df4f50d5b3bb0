// Today's date for the records the tools and calibration stamp (bench JSON, cost profiles).
#pragma once

#include <string>

namespace dsattn {

// Today in UTC as YYYY-MM-DD.
std::string utc_date();

}  // namespace dsattn
