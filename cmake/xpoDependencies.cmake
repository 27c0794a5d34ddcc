# Dependencies of the xpo::xpo target. Kept in step with cmake/xpoConfig.cmake.in, which re-finds them for users
# of the installed package.
find_package(Torch REQUIRED)
find_package(Eigen3 3.3 REQUIRED NO_MODULE)
find_package(nlohmann_json 3.10 REQUIRED)
